"""What drives papermill: the series, the sweeps, the reference run and its website."""
