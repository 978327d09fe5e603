"""dydc: derivatives of numerical routines over HTTP."""

__version__ = "0.1.0"
