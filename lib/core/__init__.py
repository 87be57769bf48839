"""What every topic shares, once: errors, graceful stop, checkpoints, metrics and
progress, small datasets on the device, devices and sharding, the XLA CPU set-up, plots."""
