"""The stages pipelines run, one folder per pipeline (plus shared image stages and procedural sources)."""
