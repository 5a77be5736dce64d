"""Evaluation: validation loss (`loss`), HellaSwag under two conventions (`hellaswag`) and
comparison tables and charts against published numbers (`report`)."""
