"""s2agri: cultivated land and field parcels from Sentinel-2 time series, with eo-learn."""

from pathlib import Path

from setuptools import find_packages, setup

# The top-level folders install as one import namespace: s2agri.tasks, s2agri.models, ...
SUBPACKAGES = ("tasks", "models", "workflows", "aoi")

packages: list[str] = []
package_dir: dict[str, str] = {}
for folder in SUBPACKAGES:
    packages.append(f"s2agri.{folder}")
    package_dir[f"s2agri.{folder}"] = folder
    for sub in find_packages(folder):
        packages.append(f"s2agri.{folder}.{sub}")
        package_dir[f"s2agri.{folder}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"

setup(
    name="s2agri",
    version="0.1.0",
    description=__doc__,
    long_description=Path("README.md").read_text(encoding="utf-8") if Path("README.md").exists() else __doc__,
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    package_data={"s2agri.aoi": ["*.geojson", "*.gpkg"], "s2agri.workflows": ["recipes/*.yaml"]},
    install_requires=[
        "eo-learn[extra,visualization]>=1.5,<1.6",
        "sentinelhub>=3.9",
        "numpy>=1.24",
        "scipy>=1.10",
        "shapely>=2.0",
        "geopandas>=0.14",
        "pandas>=1.5",
        "rasterio>=1.3.8",
        "pyogrio>=0.7",
        "pyarrow>=12",
        "pystac>=1.8",
        "pystac-client>=0.7",
        "pyproj>=3.4",
        "scikit-image>=0.21",
        "scikit-learn>=1.4",
        "lightgbm>=4.0",
        "numba>=0.58",
        "pydantic>=2.5",
        "pyyaml>=6",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "torch>=2.1",
        "setuptools",
    ],
    extras_require={
        "dev": [
            "pytest>=7",
            "pytest-timeout>=2",
            "ruff>=0.4",
            "mypy>=1.10",
            "torch-geometric>=2.4",
            "ray>=2.9",
            "xcube-geodb>=1.0",
            "psycopg2-binary>=2.9",
            "treelite>=4.0",
            "tl2cgen>=1.0",
        ],
        "fast": ["treelite>=4.0", "tl2cgen>=1.0"],
        "geodb": ["xcube-geodb>=1.0"],
        "postgis": ["psycopg2-binary>=2.9"],
        "graph": ["torch-geometric>=2.4"],
        "ray": ["ray[default]>=2.9"],
    },
    entry_points={"console_scripts": ["s2agri = s2agri.workflows.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: GIS",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
