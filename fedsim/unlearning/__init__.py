"""Machine unlearning: what is forgotten (`forget`), the history store (`history`), evaluation (`metrics`)."""
