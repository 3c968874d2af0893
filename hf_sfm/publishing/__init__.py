"""What leaves a run: the distilled set and the inherited classifier as folders (`export`), their cards
(`cards`), their pictures (`visualization`) and their Hub repos (`hub`)."""
