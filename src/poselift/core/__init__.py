"""Device-level building blocks shared by the training and inference paths: numeric
precision (:mod:`.precision`), optimizers (:mod:`.optim`) and ``torch.compile`` with an
eager fallback (:mod:`.compile`)."""
