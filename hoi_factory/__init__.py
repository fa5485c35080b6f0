"""hoi-factory's runtime core: config, storage, dataset and model stores, the stage contract, executors.

Pipelines (tasks/) and flows (flows/) build on this; nothing here knows about a particular pipeline.
"""
