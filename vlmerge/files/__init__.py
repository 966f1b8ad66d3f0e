"""vlmerge/files"""
