"""Evaluation: cached features (`features`), zero-shot (`zeroshot`), few-shot (`fewshot`), hierarchy metrics
(`hierarchy`), the one accuracy implementation (`metrics`), benchmark loaders (`benchmarks`), held-out
benchmark making (`heldout`), t-SNE plots (`tsne`), one model × task runs (`runner`) and reports (`report`).

Submodules are imported explicitly (``from treeclip.eval.runner import evaluate``) so that light ones such as
`benchmarks` do not pull in torch.
"""
