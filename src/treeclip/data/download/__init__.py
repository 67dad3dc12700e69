"""Downloading URL catalogs (EOL media manifests, GBIF occurrence downloads, TreeOfLife-200M and plain URL
tables) into a folder that ``treeclip build --source download:DIR`` reads: `runner.download`.
Needs the ``download`` extra (httpx, pyrate-limiter, tenacity); import the submodules directly.

Why not img2dataset: as far as its documented options go, it retries a fixed number of times with no
per-host rate limit and no ``Retry-After``, resumes by whole shards (an interrupted shard is fetched again)
and resizes/re-encodes by default; the three small libraries used here give each requirement directly."""
