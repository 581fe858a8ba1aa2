"""diagnose: doctor (static analysis explains, peft's dry load decides) and its findings."""
