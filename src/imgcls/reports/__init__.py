"""Pictures of results: PNG plots (`plots`) and HTML image galleries (`gallery`)."""
