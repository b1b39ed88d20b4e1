"""Pseudo-label making: background rules, a torch refiner (PAR), an optional dense CRF, the pseudo stage."""
