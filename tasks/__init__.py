"""EOTasks of s2agri: sources, masks, features, reference, prediction, vectorising, export."""

from .safe_io import refuse_pickled_reads

# eo-learn unpickles object arrays of EOPatches it loads: no input may run code (see safe_io).
refuse_pickled_reads()


def _quiet_bbox_warning() -> None:
    """sentinelhub warns on every ``str(BBox)`` (eo-learn's workflow logs hold many) and puts its own
    filter first when imported: ours goes in front of it, in every process that imports s2agri.tasks."""
    import warnings

    import sentinelhub  # noqa: F401 (its import installs the filter this one must precede)

    warnings.filterwarnings("ignore", message="The string representation of `BBox` will change")


_quiet_bbox_warning()
