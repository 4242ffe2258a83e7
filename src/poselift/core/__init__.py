"""Pieces every stage shares: user errors, the CLI runner, device choice, checkpoint reading,
progress, numeric precision (:mod:`.precision`), optimizers (:mod:`.optim`) and ``torch.compile``
with an eager fallback (:mod:`.compile`)."""
