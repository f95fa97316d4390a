"""The reference organization server: org tokens that members use but never see."""
