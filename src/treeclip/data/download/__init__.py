"""Downloading URL catalogs (EOL media manifests, GBIF occurrence downloads, TreeOfLife-200M and plain URL
tables) into a folder that ``treeclip build --source download:DIR`` reads: `runner.download`.
Needs the ``download`` extra (httpx, pyrate-limiter, tenacity); import the submodules directly."""
