"""The error classes of s2agri, defined in the bottom layer (:mod:`s2agri.tasks.errors`) so that every
package may raise them; imported here for code written against ``s2agri.workflows.errors``."""

from s2agri.tasks.errors import S2AgriInputError, S2AgriSourceError

__all__ = ["S2AgriInputError", "S2AgriSourceError"]
