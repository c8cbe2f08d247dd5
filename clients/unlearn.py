"""Moved: each unlearning method's client steps are in its module of fedsim.unlearning.methods."""

raise ImportError("fedsim.clients.unlearn has moved: use fedsim.unlearning.methods.<name>, which holds each "
                  "method's client steps (e.g. gradient_ascent.gradient_ascent, random_label.relabel_and_train)")
