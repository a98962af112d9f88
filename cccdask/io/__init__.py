"""Readers and writers: the edges of a run."""
