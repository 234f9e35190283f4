"""Alert rules (pure, rules.py and friends); the engine and service that run them come later."""
