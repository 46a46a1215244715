"""EOTasks of s2agri: sources, masks, features, reference, prediction, vectorising, export."""

from .safe_io import refuse_pickled_reads

# eo-learn unpickles object arrays of EOPatches it loads: no input may run code (see safe_io).
refuse_pickled_reads()
