"""The embedded end-to-end benchmark (`lightning-fa demo`, `make finetune`): config (settings,
methods, held-out sets), evaluation (tracks, filters, sweeps, latency, acceptance) and run
(pretraining, fine-tuning, the driver and its command line)."""
