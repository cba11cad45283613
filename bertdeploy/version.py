"""The package version, in a module of its own so that the core modules can read it without importing the
package root (whose lazy `Predictor` would tie them to the runtime in the import graph)."""

__version__ = "0.1.0"
