"""One function per pipeline rule: read the config, do the work, write the rule's outputs."""
