"""Image folders in, validated images out: the ingest pipeline and the image stages other pipelines reuse."""
