"""Data: sources, alignment, catalogs, shards, safe image decoding, the shard loader and the miniature tree
of life generator (`treeclip.data.synth`). Import the submodules directly; this package imports nothing."""
