"""What things ARE: immutable, validated descriptions of hardware, models and calibration profiles."""
