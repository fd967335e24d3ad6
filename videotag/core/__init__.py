"""The ground floor: what every other part of videotag stands on, importing nothing of ours above it.

errors, settings (`VIDEOTAG_*`), hashing, vocabularies, model manifests, the result schema (`results`), the HDF5
feature store (`feature_store`), ONNX Runtime sessions and execution providers (`onnx_sessions`) and the URL
guard (`netguard`). Modules here import only each other (see docs/architecture.md and tests/test_floors.py).
"""
