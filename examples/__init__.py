"""Code a user brings, as recipes name it ('examples.boxes:model'): models, data, metrics, losses."""
