"""Prediction: tree-of-life and custom-label classifiers, rank aggregation, roll-up, checklists, the batch
runner, resumable writers, image embeddings and a vector index. Import the submodules directly."""
