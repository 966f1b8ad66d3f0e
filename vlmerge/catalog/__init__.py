"""vlmerge/catalog"""
