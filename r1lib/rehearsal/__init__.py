"""The rehearsal: the whole finetune flow on a random-weight model of a real R1-Distill shape (flows/rehearse.py)."""
