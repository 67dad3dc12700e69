"""Downloading URL catalogs (EOL media manifests, GBIF occurrence downloads, TreeOfLife-200M and plain URL
tables) into a folder that ``treeclip build --source download:DIR`` reads: `runner.download`.
Needs the ``download`` extra (httpx, pyrate-limiter, tenacity); import the submodules directly.

Why not img2dataset: it retries a fixed number of times without per-host rate limits or ``Retry-After``,
resumes whole shards (an interrupted shard is fetched again), re-encodes images by default and carries no
taxon, licence or owner into its output; the three small libraries used here give each of those directly."""
