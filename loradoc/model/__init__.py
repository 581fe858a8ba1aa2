"""What loradoc knows about models: module layouts, base profiles, peft's rules, quantized repacks."""
