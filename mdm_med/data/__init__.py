"""Loading transforms, datalists, label-fraction splits and the synthetic demo generator."""
