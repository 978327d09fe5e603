"""The mathematics of differentiation: the batch (problem), the strategies, bumps,
second order, input sensitivities and checking. Knows nothing of queues, devices' workers or
compiled graphs."""
