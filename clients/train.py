"""Moved: local training is fedsim.training (train_locally, margin_penalty, minibatches, make_optimizer, the
one loop) and its settings are fedsim.protocol.LocalTraining."""

raise ImportError("fedsim.clients.train has moved: use fedsim.training (train_locally, margin_penalty, minibatches, "
                  "make_optimizer) and fedsim.protocol.LocalTraining")
