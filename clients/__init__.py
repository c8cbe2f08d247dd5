"""fedsim's Flower ClientApp (`fedsim.clients.app`) and its local trainers."""
