"""rayloop: the whole life of a production tabular ML model as one closed loop on Ray.

Importing the package has no side effects: no Ray start, no folders, no logging setup.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
