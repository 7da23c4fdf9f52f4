"""The checkpoint size: measured at small buffers (calibration), modelled, cached, cross-checked."""
