"""treadle-hub: uploads a treadle run to the Hugging Face Hub, and resumes runs from it."""
