"""The sweep: plan trials, run each one (mocks, workers, producer, sampling), write its row."""
