"""Draw the README figure of the simulator: RGB frames, the truth mask and per-class NDVI profiles.

Usage: python docs/simulator_figure.py [--size 500] [--seed 1] [--box 3] [--out docs/simulator.png]
The NDVI profiles are measured on the simulated 10 m data (cloud-free pixels whose 2.5 m
reference block lies inside one polygon), not drawn from the phenology model.
"""

from __future__ import annotations

import argparse
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from s2agri.tasks import contract
from s2agri.tasks.reference import RasteriseReferenceTask
from s2agri.tasks.sources.simulator import BoxSimulator, box_bbox

GROUPS = {
    "grass/meadow (1)": [1],
    "winter cereals (3, 4)": [3, 4],
    "maize (2)": [2],
    "winter rapeseed (8)": [8],
    "vineyard/orchard (27, 30)": [27, 30],
    "forest (2000)": [2000],
    "built-up (3000)": [3000],
}


def ndvi_profiles(patch) -> dict[str, np.ndarray]:
    """Per-group (T, 3) quartiles of NDVI over clear pixels that lie inside one polygon."""
    polys = patch[contract.ALL_POLYS][..., 0]
    h, w = polys.shape[0] // 4, polys.shape[1] // 4
    blocks = polys.reshape(h, 4, w, 4).transpose(0, 2, 1, 3).reshape(h, w, 16)
    pure = (blocks == blocks[..., :1]).all(-1)
    code = np.where(pure, blocks[..., 0], 0)
    refl = patch[contract.BANDS].astype(np.float32) * contract.NORM_FACTOR
    b = contract.BAND_INDEX
    ndvi = (refl[..., b["B08"]] - refl[..., b["B04"]]) / np.maximum(
        refl[..., b["B08"]] + refl[..., b["B04"]], 1e-6
    )
    clear = patch[contract.IS_DATA][..., 0] & (patch[contract.CLM][..., 0] == 0)
    out = {}
    for name, codes in GROUPS.items():
        member = np.isin(code, codes)
        if member.sum() < 20:
            continue
        rows = []
        for t in range(ndvi.shape[0]):
            values = ndvi[t][member & clear[t]]
            rows.append(np.percentile(values, [25, 50, 75]) if values.size >= 20 else [np.nan] * 3)
        out[name] = np.array(rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--box", type=int, default=3)
    parser.add_argument("--out", default="docs/simulator.png")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    patch = BoxSimulator(box_bbox(args.box, args.size), args.seed, 40, 40).eopatch(threads=2)
    patch = RasteriseReferenceTask().execute(patch)
    cover = 1 - (patch[contract.IS_DATA][..., 0] & (patch[contract.CLM][..., 0] == 0)).mean(axis=(1, 2))
    clear_t = int(np.argmin(np.where(np.array([d.month for d in patch.timestamps]) >= 6, cover, 2)))
    cloudy_t = int(np.argmin(np.abs(cover - 0.45)))
    days = np.array([d.timetuple().tm_yday for d in patch.timestamps])

    fig = plt.figure(figsize=(16, 9.5), layout="constrained")
    grid = fig.add_gridspec(2, 3)
    b = contract.BAND_INDEX
    for col, t in enumerate((clear_t, cloudy_t)):
        ax = fig.add_subplot(grid[0, col])
        rgb = patch[contract.BANDS][t][..., [b["B04"], b["B03"], b["B02"]]].astype(np.float32) * 1e-4 * 3.5
        ax.imshow(np.clip(rgb, 0, 1))
        ax.set_title(
            f"RGB {patch.timestamps[t]:%Y-%m-%d} at 10 m, {100 * cover[t]:.0f} % cloud or no data",
            fontsize=10,
        )
        ax.axis("off")
    ax = fig.add_subplot(grid[0, 2])
    truth = np.zeros((*patch[contract.CULTIVATED].shape[:2], 3))
    truth[patch[contract.ALL_POLYS][..., 0] > 0] = (0.85, 0.85, 0.85)
    truth[patch[contract.CULTIVATED][..., 0]] = (0.1, 0.55, 0.1)
    truth[patch[contract.NOT_DECLARED][..., 0]] = (0.9, 0.6, 0.0)
    ax.imshow(truth, interpolation="nearest")
    ax.set_title(
        "truth at 2.5 m: cultivated green, not declared orange,\nother polygons grey, roads/paths/buffer black",
        fontsize=10,
    )
    ax.axis("off")

    ax = fig.add_subplot(grid[1, :])
    for name, q in ndvi_profiles(patch).items():
        (line,) = ax.plot(days, q[:, 1], marker="o", ms=3, label=name)
        ax.fill_between(days, q[:, 0], q[:, 2], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("day of year 2019 (cloud-free 10 m pixels, median and inter-quartile range)")
    ax.set_ylabel("NDVI")
    ax.set_xlim(59, 245)
    ax.grid(alpha=0.3)
    ax.legend(ncol=4, loc="lower center")
    fig.suptitle(f"s2agri simulator: box {args.box}, seed {args.seed}, {len(patch.timestamps)} acquisitions")
    fig.savefig(args.out, dpi=70)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
