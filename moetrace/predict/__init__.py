"""Forecasting expert load (`load`) and routing paths (`path`) from traces."""
