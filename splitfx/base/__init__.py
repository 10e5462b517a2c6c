"""Base layer: errors, atomic files, the saved-tensor meter, and the plan report every layer passes around."""
