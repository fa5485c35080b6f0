"""A calibration pipeline: samples with a known CPU cost and contents that follow from their seed alone.

For benchmarks (factory overhead, scaling with workers) and fault tests (kills, resumes, clusters): its
output can be recomputed independently from (seed, count), so any lost, duplicated or corrupted sample shows.
"""
