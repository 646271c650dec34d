"""The CrossGuard policy pack: the platform's security, reliability and cost guardrails."""
