"""videotag: two-stage video tagging (frame features -> sequence model -> ranked tags).

The shared package holds what every door (CLI, API, Celery) uses: settings, the feature-store format,
vocabularies, model manifests, the result schema and the pipeline functions.
"""

__version__ = "0.1.0"
