"""Procedural stand-ins: inputs with known answers, for the embedded demo and the tests. Labelled as stand-ins."""
