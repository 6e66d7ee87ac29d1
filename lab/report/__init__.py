"""What a person reads: the standard figures (`plots`) and the self-contained HTML report (`html`)."""
